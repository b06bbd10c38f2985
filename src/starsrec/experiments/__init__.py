"""Running models into reports and artifacts: the benchmark records, their figures, and
`starsrec train` / `starsrec evaluate ARTIFACT` directories."""
