//! cairn client: talks to a cairn cluster using only the wire types.
