"""The Graph API simulator and the Messenger payload builders it shares with tests and demos."""
