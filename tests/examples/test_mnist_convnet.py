"""The MNIST convnet example, shortened: it must learn well above chance (0.10)."""
from examples.mnist_convnet import main


def test_mnist_convnet_learns():
    accuracy = main(epochs=2, train_limit=1500, baseline=False)["convnet"]
    assert accuracy > 0.7, accuracy
