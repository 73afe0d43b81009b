"""Image buffer of previously generated images (Shrivastava et al., CVPR 2017, sec. 2.3; used by CycleGAN, Zhu et al.
2017, sec. 4 "we update the discriminators using a history of generated images rather than the ones produced by the
latest generators", buffer of 50 images).

The discriminator then sees, for each new fake image, with probability 1/2 that image and with probability 1/2 an
older one from the buffer (which the new image replaces), as in the CycleGAN reference code's ``ImagePool``. Random
draws use torch's default generator (or one passed in), so a seeded run repeats and a resumed run continues exactly
when the torch RNG state is restored (the training state does that).
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor


class ImagePool:
    """A buffer of at most ``pool_size`` generated images.

    Args:
        pool_size: buffer capacity; 0 disables the buffer (``query`` returns its input unchanged).
        generator: optional ``torch.Generator`` (CPU) for the random draws; default: torch's global generator.

    Raises:
        ValueError: ``pool_size`` < 0.
    """

    def __init__(self, pool_size: int, generator: Optional[torch.Generator] = None):
        if int(pool_size) < 0:
            raise ValueError(f"ImagePool: pool_size must be >= 0 (--pool_size), got {pool_size}")
        self.pool_size = int(pool_size)
        self.generator = generator
        self.images: List[Tensor] = []

    def __len__(self) -> int:
        return len(self.images)

    def query(self, images: Tensor) -> Tensor:
        """Return a batch for the discriminator from the new ``images`` ``(N, C, H, W)`` (any range; detached).

        While the buffer is not full each new image is stored and returned. Once it is full, each image is, with
        probability 1/2, returned as is, else swapped for a uniformly chosen stored image (which is returned; the new
        image takes its place). ``pool_size == 0``: ``images`` is returned unchanged (the same object).

        Returns:
            ``(N, C, H, W)`` tensor on ``images``' device and dtype (stored images must share H and W when N > 1).
        """
        if self.pool_size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.pool_size:
                self.images.append(image.clone())
                out.append(image)
                continue
            if float(torch.rand((), generator=self.generator)) > 0.5:
                k = int(torch.randint(0, self.pool_size, (), generator=self.generator))
                old = self.images[k]
                self.images[k] = image.clone()
                out.append(old.to(device=images.device, dtype=images.dtype))
            else:
                out.append(image)
        return torch.cat(out, 0)

    # ---- resume --------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Checkpoint-safe state (``weights_only`` loadable): ``{'pool_size': int, 'images': [CPU tensors (1, C, H, W)]}``."""
        return {"pool_size": self.pool_size, "images": [t.detach().cpu() for t in self.images]}

    def load_state_dict(self, state: dict, device: Optional[torch.device] = None) -> None:
        """Restore a :meth:`state_dict`; images are moved to ``device`` (default: CPU).

        Raises:
            ValueError: the state holds more images than this pool's ``pool_size`` or is malformed.
        """
        if not isinstance(state, dict) or "images" not in state:
            raise ValueError("ImagePool.load_state_dict: expected a dict with an 'images' list")
        images = list(state["images"])
        if len(images) > self.pool_size:
            raise ValueError(f"ImagePool.load_state_dict: the saved pool holds {len(images)} images, more than "
                             f"--pool_size {self.pool_size}")
        if any(not isinstance(t, Tensor) for t in images):
            raise ValueError("ImagePool.load_state_dict: 'images' must hold tensors")
        self.images = [t.to(device) if device is not None else t for t in images]
