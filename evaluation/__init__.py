"""`ragtune eval`: run the same cases through several strategies and compare them."""
