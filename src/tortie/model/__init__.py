"""tortie.model: Calico v3 resources, selectors, manifests and datastore key names.

The lowest layer: imports nothing from tortie except ``tortie.errors``. Import the submodule
you need (importing this package does no work):

- :mod:`tortie.model.resources` - the resource models (IPPool, Node, BGPPeer, ...).
- :mod:`tortie.model.rules` - the models' rules beyond types, as plain functions.
- :mod:`tortie.model.stored` - stored documents recognised as valid without the models
  (pydantic), for the reading commands.
- :mod:`tortie.model.selector` - Calico label selectors.
- :mod:`tortie.model.loader` - reading and writing YAML/JSON manifests.
- :mod:`tortie.model.output` - documents printed as YAML/JSON (without the models).
- :mod:`tortie.model.kinds` - kind classes by name; :mod:`tortie.model.kindinfo` - kind
  names, aliases (``ippools``, ``wep``, ...), plurals and scope without the models.
- :mod:`tortie.model.keys` - datastore keys.
- :mod:`tortie.model.validation` - checks across resources (overlapping pools, ...).
- :mod:`tortie.model.errors` - ModelError, ValidationError, SelectorError.
- :mod:`tortie.model.fields` - scalar checks (names, AS numbers, durations, CIDRs).
- :mod:`tortie.model.naming` - the ownership markers (``cali`` names, tunl0, route protocol 80,
  ...): a storage format, defined once.
- :mod:`tortie.model.cniwire` - the plugin-agent wire format; :mod:`tortie.model.cnierrors` -
  CniError and the one mapping from error types to CNI codes.
"""
