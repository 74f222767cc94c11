"""Networks that carry a method's modules into ``network_weights`` and that ``nnUNetv2_predict`` rebuilds.

nnU-Net's predictor rebuilds the network with ``trainer_class.build_network_architecture(plans_manager,
configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision=False)`` and then loads
``network_weights`` strictly. A method whose inference needs more than nnU-Net's planned network (a prior injected
into the decoder, a frozen pretrained branch) therefore overrides that method as a **classmethod** that reads class
attributes (never constructor arguments) and wraps the planned network::

    class nnUNetTrainerMyMethod(nnUNetTrainerSemi):
        prior_channels = 8

        @classmethod
        def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels,
                                       num_output_channels, enable_deep_supervision=True):
            planned = planned_network(plans_manager, configuration_manager, num_input_channels,
                                      num_output_channels, enable_deep_supervision)
            return MyNetwork(planned, cls.prior_channels)     # a PlannedNetworkWrapper

The trainer builds the same network the same way, so the exported weights and the rebuilt network always match.
Frozen parts that are reproducible from a named source are loaded inside the classmethod and kept out of the
weights with :class:`nnunet_semi.core.frozen.FrozenPart`.
"""
from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn


def planned_network(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                    num_input_channels: int, num_output_channels: int,
                    enable_deep_supervision: bool = True) -> nn.Module:
    """nnU-Net's network as planned for this configuration (what vanilla nnU-Net trains)."""
    return nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                    num_output_channels, enable_deep_supervision)


class PlannedNetworkWrapper(nn.Module):
    """Base of a method's network around nnU-Net's planned one (``self.planned``).

    ``encoder`` and ``decoder`` are the planned network's, so nnU-Net's deep-supervision switch
    (``decoder.deep_supervision``), our teachers and feature hooks work unchanged. Subclasses add modules and
    override :meth:`forward`, which must return what the planned network returns: full-resolution logits
    ``(B, C, *spatial)``, or a list over deep-supervision scales while deep supervision is enabled.
    """

    def __init__(self, planned: nn.Module):
        super().__init__()
        self.planned = planned

    @property
    def encoder(self) -> nn.Module:
        return self.planned.encoder

    @property
    def decoder(self) -> nn.Module:
        return self.planned.decoder

    def forward(self, x: torch.Tensor):
        return self.planned(x)
