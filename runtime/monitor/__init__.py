"""Model monitoring on the device: the statistics a bundle's reference holds, and drift against them.

`stats` defines the statistics once (convert builds the reference with it, the daemon its windows);
`drift` keeps the rolling windows and scores them. No TensorFlow here: this is the device side.
"""
