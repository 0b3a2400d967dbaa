"""The KJV LSTM example, shortened: it must learn well above chance (about 0.18)."""
from examples.text_lstm import main


def test_text_lstm_learns():
    accuracy = main(epochs=3, train_limit=2000, baseline=False, steps=24, units=32,
                    test_limit=1000)["lstm"]
    assert accuracy > 0.35, accuracy
