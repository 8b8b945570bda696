//! The libp2p side of a node. Today: the node's persistent identity (its ed25519 key and the
//! PeerId derived from it). The swarm (Kademlia, gossipsub, request-response) joins here.

pub mod identity;
