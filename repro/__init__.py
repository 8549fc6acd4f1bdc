"""A faithful reproduction of Krizhevsky, Sutskever and Hinton, "ImageNet Classification with
Deep Convolutional Neural Networks" (NIPS 2012): the two-tower AlexNet, the paper's recipe,
and the paper's tables beside this project's numbers."""

__version__ = "0.1.0"
