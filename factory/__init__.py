"""Flower appliance factory: matrix -> Packer HCL -> images -> OpenNebula -> federation -> publish/report."""
