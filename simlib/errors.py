"""The errors simlib raises for bad input, defined without heavy imports so that the command line can catch them
before it has loaded a model. Each message names the file or setting and the reason."""


class CollectionError(ValueError):
    """A collection that cannot be built, searched, saved or loaded as asked; the message says why."""


class WeightsUnavailableError(RuntimeError):
    """The weights a backbone needs cannot be found or fetched; the message says how to supply them."""


class WeightsMismatchError(ValueError):
    """A weights file that does not fit the backbone's architecture."""


class CollectionFileError(ValueError):
    """A collection that is missing, corrupt, tampered with, from an incompatible version, or changed by another
    process while in use; the message names the file and the reason."""
