"""Recipe in, merged weights out: the plan, the walk over tensors, the sinks.

``engine.run_merge`` is the front door (service calls it); ``plan`` decides
everything before a weight is read; ``walk`` streams tensors through the
method.
"""
