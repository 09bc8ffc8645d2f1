"""edgekit in the browser: the demo server (``edgekit web``); the JavaScript library is ``web/src/edgekit.js``."""
