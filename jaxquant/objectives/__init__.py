"""Pure loss terms; each docstring gives its formula."""
