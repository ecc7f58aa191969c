"""Stage 4, what leaves the process: steerer folders, their provenance, the Hub, llama.cpp control vectors."""
