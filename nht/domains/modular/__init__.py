"""Modular arithmetic (grokking): datasets ``(a op b) mod p``, MLP and transformer models, and the
vectorised many-cell trainer. The shortcut is memorisation of the training pairs."""
