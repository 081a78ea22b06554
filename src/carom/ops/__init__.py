"""Operations: metrics, the HTTP API, and what feeds them."""
