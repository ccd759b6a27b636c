"""The cooperative web cache cluster (paper: indirect-retrieval NF): caching HTTP
proxies whose objects stay on the nodes that fetched them, found through cogs — or,
as the baseline, by asking every sibling (ICP-style)."""
