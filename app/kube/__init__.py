"""The Kubernetes API: client, kubeconfig loading and one-line errors, Lease election."""
