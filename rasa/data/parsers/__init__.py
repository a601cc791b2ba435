"""Raw-format parsers, one module per family; importing this package registers them all in
:data:`rasa.data.formats.FORMATS` (see :mod:`rasa.data.formats` for the policy)."""

from rasa.data.parsers import karpathy, pedes, reed  # noqa: F401  (registration)
