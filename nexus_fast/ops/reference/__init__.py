"""Plain-PyTorch references of every operator: the oracle of the tests and the fallback where no
kernel applies. Written for clarity, differentiable by autograd where the operator has gradients."""
