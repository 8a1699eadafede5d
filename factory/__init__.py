"""Flower appliance factory: matrix -> Packer HCL -> images -> OpenNebula -> federation rounds -> publish/report."""
