"""Device selection shared by the CLIP prior, the restorers and the scripts."""
import torch


def resolve_device(device='auto'):
    """'auto' or None -> 'cuda' when available, else 'cpu'; other values are checked.

    Raises:
        ValueError: A CUDA device requested on a machine without CUDA.
    """
    if device is None or str(device) == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'Device {device} requested but CUDA is not available; use cpu or auto.')
    return device
