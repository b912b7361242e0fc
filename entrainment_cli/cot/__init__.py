"""`entrain cot`: MATH-500 prompting strategies and the sparsity curriculum."""
