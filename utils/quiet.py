"""Notes from libraries that a user of these scripts cannot act on, kept off the terminal.

Import this before Paddle: Paddle warns at import time that ccache is missing (it only matters
when compiling C++ extensions, which this project never does), and its BatchNorm repeats in
training that it tracks running statistics. Pillow logs decoder complaints about a broken file
that the one-line error naming the file already covers.
"""
import logging
import warnings

warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)
warnings.filterwarnings("ignore", message="When training, we now always track global mean",
                        category=UserWarning)
logging.getLogger("PIL").setLevel(logging.CRITICAL)
