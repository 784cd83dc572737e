import os
import sys
import tempfile

# No test may reach a model hub, online machine or not: CLIP tags resolve from local caches or fail at once. Set
# before anything imports huggingface_hub (it reads the flag on import); every subprocess a test starts inherits it.
os.environ['HF_HUB_OFFLINE'] = '1'
# The CLI's CPU default (--backend auto) exports networks to ONNX into a cache; keep it out of the user's home folder
# (one folder per test session, removed with it).
_ONNX_CACHE = tempfile.TemporaryDirectory(prefix='mixcl_test_onnx_')
os.environ['MIXCL_ONNX_CACHE'] = _ONNX_CACHE.name

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import mixcl_arch  # noqa: E402,F401  (registers everything and patches basicsr before tests import it)

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope='module')
def one_thread():
    """Small convolutions run far faster single-threaded on a shared 2-core machine; modules opt in with
    ``pytestmark = pytest.mark.usefixtures('one_thread')``."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
