"""Reading Paddle's pickled files (.pdparams, .pdckpt) without letting them run code.

Unpickling can call any Python function that the file names, so a `.pdparams` from a stranger
can run anything on your machine. Weights and training states need nothing but NumPy arrays,
numbers, strings, lists and dicts: only the functions that rebuild NumPy arrays are allowed
here, and a file that asks for anything else is refused before that is called.
"""
import pickle
from typing import BinaryIO, Union

from paddle.framework.io_utils import _pack_loaded_dict  # joins parameters split by old pickles

_ARRAY_BUILDERS = {"_reconstruct", "scalar", "_frombuffer", "ndarray", "dtype"}
_ARRAY_MODULES = {"numpy", "numpy.core.multiarray", "numpy._core.multiarray",
                  "numpy.core.numeric", "numpy._core.numeric"}
_ALLOWED = {(module, name) for module in _ARRAY_MODULES for name in _ARRAY_BUILDERS}
_ALLOWED.add(("collections", "OrderedDict"))
_ALLOWED.add(("_codecs", "encode"))  # how pickle protocol 2 stores bytes (e.g. array data)


class RefusedPickle(pickle.UnpicklingError):
    """The file asks to call something other than NumPy's array builders."""


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise RefusedPickle(f"{module}.{name}")
        return super().find_class(module, name)


def load_arrays_only(source: Union[str, BinaryIO]) -> object:
    """What paddle.save wrote to `source` (a path or a binary stream: arrays, numbers, strings,
    lists, dicts); raises RefusedPickle naming the function when it would call anything else."""
    if not isinstance(source, str):
        return _pack_loaded_dict(_ArraysOnly(source, encoding="latin1").load())
    with open(source, "rb") as stream:
        return _pack_loaded_dict(_ArraysOnly(stream, encoding="latin1").load())
