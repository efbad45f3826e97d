"""
The network side: AMP commands, the node's AMP protocol, peer links and forwarding.
"""
