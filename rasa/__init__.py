"""rasa: a reproducible pipeline for text-based person search.

Re-creates the results of RaSa (Bai et al., IJCAI 2023) and the weakly supervised CMMT method
(Zhao et al., ICCV 2021). See README.md for the two commands that run everything.
"""

__version__ = "0.1.0"
