"""Reference domains: small state machines that show why order matters."""
