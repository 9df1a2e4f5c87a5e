"""minialexnet: AlexNet (Krizhevsky, Sutskever & Hinton, NeurIPS 2012) from scratch.

Modules, in the order an image meets them:
    backend    NumPy or CuPy, devices and transfers (the only numpy/cupy import)
    im2col     the trick behind convolution
    layers     Conv2D ReLU Tanh LocalResponseNorm MaxPool2D Dropout Linear Flatten
               SoftmaxCrossEntropy
    gradcheck  finite-difference checks of every backward

Importing minialexnet changes nothing in the process and loads nothing (not even
NumPy): the command-line tools can then tune the CPU settings before NumPy loads
(``minialexnet.cpu.tune``).
"""

__version__ = "0.1.0"
