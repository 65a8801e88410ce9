"""Kubernetes front end: CRDs generated from the resource schema (`crds`) and a kopf operator
(`python -m meshsec.controller.operator`) that syncs custom resources into the controller."""
