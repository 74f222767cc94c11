"""Frozen Stable-Diffusion VAEs read from local folders, with multi-scale encoder features and adaptable decoders.

Two diffusers families are supported: ``AutoencoderKL`` (the SD 1.x/2.x VAE) and ``AutoencoderTiny`` (TAESD, a
distilled stand-in with the same latent space: 4 channels at 1/8 resolution). Nothing is downloaded: the folder
(diffusers layout, ``config.json`` + weights) comes from a class attribute or an environment variable:

* ``nnUNet_semi_sd_vae``: a folder holding a diffusers ``AutoencoderKL`` (e.g. ``vae/`` of
  ``stabilityai/sd-vae-ft-mse`` or of a Stable Diffusion checkpoint, saved with ``save_pretrained``);
* ``nnUNet_semi_taesd``: a folder holding a diffusers ``AutoencoderTiny`` (``madebyollin/taesd``).

:class:`FrozenVAE` runs either family as a list of *steps* (blocks of the encoder or decoder, in order), so that
the output of the last step at every resolution is available as a skip feature (encoder) or as the place where a
skip adapter acts (decoder). Images go in and come out as 3 channels in [-1, 1].
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from nnunet_semi.errors import UserError

VAE_VARIABLES = {"sd": "nnUNet_semi_sd_vae", "taesd": "nnUNet_semi_taesd"}
VAE_CLASSES = {"sd": "AutoencoderKL", "taesd": "AutoencoderTiny"}
Adapt = Callable[[int, torch.Tensor], torch.Tensor]


def vae_folder(kind: str, path: str | None = None) -> Path:
    """The local folder of the VAE of ``kind`` ('sd' or 'taesd'): ``path`` if given, else the folder named by the
    kind's environment variable. Stops with a message saying where to put the weights when none is found."""
    if kind not in VAE_VARIABLES:
        raise UserError(f"Unknown VAE kind {kind!r}: use one of {sorted(VAE_VARIABLES)}.")
    variable = VAE_VARIABLES[kind]
    given = path or os.environ.get(variable)
    how = (f"Save a diffusers {VAE_CLASSES[kind]} with save_pretrained(FOLDER) (config.json and weights) on this "
           f"machine and set {variable}=FOLDER (also for nnUNetv2_predict), or set the trainer's vae_path. "
           f"Without the Stable-Diffusion VAE, use TAESD: the variant nnUNetTrainerSemiGDA_TAESD reads a diffusers "
           f"AutoencoderTiny folder from nnUNet_semi_taesd (e.g. madebyollin/taesd).")
    if not given:
        raise UserError(f"No {VAE_CLASSES[kind]} VAE configured: {variable} is not set. {how}")
    folder = Path(given).expanduser()
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} (from {'vae_path' if path else variable}) is not a diffusers model folder: "
                        f"config.json is missing. {how}")
    return folder


def load_diffusers_vae(folder: str | Path) -> nn.Module:
    """The diffusers AutoencoderKL or AutoencoderTiny saved in ``folder`` (class from its config.json), offline."""
    class_name = json.loads((Path(folder) / "config.json").read_text()).get("_class_name")
    if class_name not in VAE_CLASSES.values():
        raise UserError(f"{folder}/config.json describes a {class_name!r}; a VAE folder must hold one of "
                        f"{sorted(VAE_CLASSES.values())}.")
    try:
        import diffusers
    except ImportError as error:
        raise UserError("The VAE needs the diffusers package: pip install 'nnunet-semi[gda]'.") from error
    diffusers.utils.logging.set_verbosity_error()  # no advice about optional packages on every load
    return getattr(diffusers, class_name).from_pretrained(str(folder), local_files_only=True)


def _kl_steps(vae: nn.Module) -> tuple[list, Callable, list, Callable]:
    """AutoencoderKL as steps: encoder conv_in, down blocks, mid block; decoder conv_in, mid block, up blocks.
    Latents are the posterior means, scaled (and shifted) as diffusers pipelines scale them."""
    encoder, decoder, config = vae.encoder, vae.decoder, vae.config
    scale, shift = config.scaling_factor, config.shift_factor or 0.0
    latent_channels = config.latent_channels

    def encoder_head(h: torch.Tensor) -> torch.Tensor:
        moments = encoder.conv_out(encoder.conv_act(encoder.conv_norm_out(h)))
        moments = vae.quant_conv(moments) if vae.quant_conv is not None else moments
        return (moments[:, :latent_channels] - shift) * scale

    def decoder_input(z: torch.Tensor) -> torch.Tensor:
        z = z / scale + shift
        return decoder.conv_in(vae.post_quant_conv(z) if vae.post_quant_conv is not None else z)

    encoder_steps = [encoder.conv_in, *encoder.down_blocks, encoder.mid_block]
    decoder_steps = [decoder_input, lambda h: decoder.mid_block(h, None),
                     *[lambda h, block=block: block(h, None) for block in decoder.up_blocks]]
    return (encoder_steps, encoder_head, decoder_steps,
            lambda h: decoder.conv_out(decoder.conv_act(decoder.conv_norm_out(h))))


def _tiny_steps(vae: nn.Module) -> tuple[list, Callable, list, Callable]:
    """AutoencoderTiny (TAESD) as steps: the layers of its encoder and decoder, with TAESD's own input and output
    scaling ([-1, 1] images, [0, 1] inside; soft-clamped latents)."""
    encoder, decoder = list(vae.encoder.layers), list(vae.decoder.layers)
    encoder_steps = [lambda x: encoder[0](x.add(1).div(2)), *encoder[1:-1]]
    decoder_steps = [lambda z: decoder[0](torch.tanh(z / 3) * 3), *decoder[1:-1]]
    return encoder_steps, encoder[-1], decoder_steps, lambda h: decoder[-1](h).mul(2).sub(1)


def _last_index_per_stride(strides: list[int]) -> dict[int, int]:
    """{stride: index of the last step whose output has that stride}."""
    return {stride: index for index, stride in enumerate(strides)}


class FrozenVAE(nn.Module):
    """A diffusers VAE run step by step (wrap it in :class:`~nnunet_semi.core.frozen.FrozenPart` to freeze it).

    Attributes found by one dry run at construction: ``factor`` (image size / latent size), ``latent_channels``,
    ``encoder_channels`` and ``decoder_channels`` ({stride: channels} of the last step at each stride; stride is
    relative to the image).
    """

    def __init__(self, vae: nn.Module, name: str = ""):
        super().__init__()
        self.vae = vae
        self.name = name or type(vae).__name__
        steps = _tiny_steps(vae) if type(vae).__name__ == "AutoencoderTiny" else _kl_steps(vae)
        self._encoder_steps, self._encoder_head, self._decoder_steps, self._decoder_head = steps
        self._describe()

    @torch.no_grad()
    def _describe(self, size: int = 64) -> None:
        was_training = self.training
        self.eval()
        x = torch.zeros(1, 3, size, size, device=next(self.vae.parameters()).device)
        encoder_outputs = self._run(self._encoder_steps, x)
        latent = self._encoder_head(encoder_outputs[-1])
        self.factor, self.latent_channels = size // latent.shape[-1], latent.shape[1]
        decoder_outputs = self._run(self._decoder_steps, latent)
        self._encoder_levels = _last_index_per_stride([size // o.shape[-1] for o in encoder_outputs])
        self._decoder_levels = _last_index_per_stride([size // o.shape[-1] for o in decoder_outputs])
        self.encoder_channels = {s: encoder_outputs[i].shape[1] for s, i in self._encoder_levels.items()}
        self.decoder_channels = {s: decoder_outputs[i].shape[1] for s, i in self._decoder_levels.items()}
        self.train(was_training)

    @staticmethod
    def _run(steps: list, h: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for step in steps:
            h = step(h)
            outputs.append(h)
        return outputs

    def encode_with_features(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Images (B, 3, H, W) in [-1, 1], H and W multiples of ``factor`` -> latents (B, L, H/f, W/f) (eq. 1) and
        {stride: the encoder's last feature map at that stride}."""
        outputs = self._run(self._encoder_steps, images)
        return self._encoder_head(outputs[-1]), {s: outputs[i] for s, i in self._encoder_levels.items()}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> latents (B, L, H/f, W/f)."""
        return self.encode_with_features(images)[0]

    def decode(self, latents: torch.Tensor, adapt: Adapt | None = None) -> torch.Tensor:
        """Latents (B, L, h, w) -> images (B, 3, f h, f w) in about [-1, 1] (eq. 4). ``adapt(stride, h)`` replaces
        the decoder's last feature map at every stride (where a skip adapter acts, eq. 7)."""
        levels = {i: s for s, i in self._decoder_levels.items()}
        h = latents
        for index, step in enumerate(self._decoder_steps):
            h = step(h)
            if adapt is not None and index in levels:
                h = adapt(levels[index], h)
        return self._decoder_head(h)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, factor={self.factor}, latent_channels={self.latent_channels}"
