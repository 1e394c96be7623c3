"""Imported once by the mapping pool's fork server (`connector.mapping_pool`): the mapping code and every
mapped type's validators are built here, once, and each worker forked from this process starts with them.

Spawned workers each imported the connector and built the validators of every type again (1.3 to 1.4 s of CPU
per worker at every run, measured with py-spy on a 20,000-resource sync).
"""

from connector import mapping_pool

mapping_pool.warm_up()
