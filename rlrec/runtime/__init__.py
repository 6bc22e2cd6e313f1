"""The runtime every stage runs on: the content-keyed store and its stages (`store`, `stage`, `cache`,
`artifacts`), where work runs (`executor`, `launch`), and the machine (`precision`, `memory`, `console`).
Nothing here knows a paper."""
