"""Run kubetune locally: the real operator against the API emulator, trainer and vLLM as local processes."""
