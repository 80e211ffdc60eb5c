"""Reports: the comparison table now; HTML and plots build on the same RunResults."""
