"""Screens of the app: chat, session browser, model picker, parameters, help, confirmations."""
