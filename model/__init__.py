"""Model backends behind one interface: read pages back to text, encode them into visual tokens."""
