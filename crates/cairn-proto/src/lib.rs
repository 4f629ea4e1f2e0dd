//! cairn wire types: the messages clients and nodes exchange.
