"""Shared test harness: network-namespace labs (netns.py), strongSwan peers (strongswan.py), etcd."""
