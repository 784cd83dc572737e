"""The restoration methods of :func:`mixcl_arch.restorers.build_restorer`.

Standard library only, so that command-line parsers list them without importing torch (``mixcl_arch.dehaze_args``).
"""

#: 'net' = a trained network, 'hazy' = the input unchanged, 'dcp' / 'dehazenet' = the baselines.
METHODS = ('net', 'hazy', 'dcp', 'dehazenet')
