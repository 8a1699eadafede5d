"""The OpenNebula driver (see cloud.py). No OpenNebula call anywhere else in the factory."""

from factory.one.cloud import ImageRef, OneCloud, ServiceDeployment, VMInfo
from factory.one.settings import OneSettings, load_settings

__all__ = ["ImageRef", "OneCloud", "OneSettings", "ServiceDeployment", "VMInfo", "load_settings"]
