"""minialexnet: AlexNet (Krizhevsky, Sutskever & Hinton, NeurIPS 2012) from scratch.

Modules, in the order an image meets them:
    backend    NumPy or CuPy, devices and transfers (the only numpy/cupy import)
    reference  every layer as the paper writes it (to read), the tower steps, SGD
    layers     the fast Conv2D ReLU Tanh LocalResponseNorm MaxPool2D Dropout Linear
               Flatten SoftmaxCrossEntropy (what training runs; same numbers)
    im2col     the channels-last im2col the fast Conv2D runs
    gradcheck  finite-difference checks of every backward

Importing minialexnet changes nothing in the process and loads nothing (not even
NumPy): the command-line tools can then tune the CPU settings before NumPy loads
(``minialexnet.cpu.tune``).
"""

__version__ = "0.1.0"
