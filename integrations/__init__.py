"""Adapters for agent frameworks (``optimem.integrations.langchain``): thin translations over the
embedded ``Memory`` or the HTTP ``Client``. optimem itself never imports them; each needs its
framework installed (``pip install 'optimem[langchain]'``)."""
