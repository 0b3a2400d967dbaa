"""The KJV LSTM example, shortened (three books, a small LSTM, a few epochs): it must beat
always answering the largest book (Psalms, 0.46 of these verses) by far."""
from examples.text_lstm import main


def test_text_lstm_learns():
    accuracy = main(epochs=3, train_limit=1500, baseline=False, steps=20, units=32,
                    test_limit=500, learning_rate=0.01, batch_size=32, num_classes=3)["lstm"]
    assert accuracy > 0.6, accuracy
