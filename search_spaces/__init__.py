"""Search spaces: the supernets and networks otonas searches and prunes.

Plain PyTorch models (no otonas imports: they stand for ordinary user
models), built by name::

    import search_spaces
    search_spaces.list()                      # ['carn', 'convnext_tiny', ...]
    model = search_spaces.create("resnet20")  # paper-scale default
    tiny = search_spaces.create("resnet20", size="tiny", in_chans=1, num_classes=10)
    search_spaces.info("resnet20")            # input shape, dtype, output, source, counts

Every entry takes ``size="default"`` (the paper-scale model) or
``size="tiny"`` (a few thousand parameters, for fast tests); image models
take ``num_classes`` and ``in_chans`` where they apply. See
``docs/search_spaces.md`` for the table of entries.

Supernets (candidate operators summed, for operator erasure): ``darts``,
``demosupnet``, ``superresnet``, ``stackedunets``, ``carn``. Plain networks
(for channel pruning): ``vgg16_bn``, ``resnet20``, ``resnet56``,
``resnet18``, ``resnet50``, ``densenet121``, ``convnext_tiny``,
``transformer``.
"""

from __future__ import annotations

from . import (  # noqa: F401  (importing a model file registers its entries)
    carn,
    convnext,
    darts,
    demosupnet,
    densenet,
    resnet_cifar,
    stackedunets,
    superresnet,
    transformer,
    vgg,
)
from ._registry import EntryInfo, create, info, register
from ._registry import list_entries as list  # noqa: A001  (search_spaces.list() is the public name)

__all__ = ["EntryInfo", "create", "info", "list", "register"]
