"""Estimation before and beside a run: parameter counts, activation memory, FLOPs, the preflight plan.

params.py counts parameters in closed form from an architecture spec; activations*.py and
activation_flows.py count what autograd keeps (activation_probe.py measures it); flops.py counts
useful FLOPs; plan.py puts them together into "will each method fit?" before any weights load.
"""
