"""A local stand-in for OpenNebula 7's front-end: XML-RPC, OneGate, OneFlow, http marketplace, VM drivers."""
