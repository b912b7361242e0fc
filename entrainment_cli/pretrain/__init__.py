"""`entrain pretrain`: knowledge graph, tokenizer, training loop and evaluation."""
