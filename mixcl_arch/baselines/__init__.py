"""Classic dehazing baselines: dark channel prior (``dcp``), DehazeNet recovery (``dehazenet``), guided filter.

Submodules are imported on demand (``from mixcl_arch.baselines.dcp import DCPRestorer``) so that importing the
package stays cheap.
"""
