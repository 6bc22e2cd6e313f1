"""What a run leaves behind: typed results (`results`), tables and plots (`report`), and artifacts in
formats other tools read (`export`)."""
