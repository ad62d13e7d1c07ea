// SPDX-License-Identifier: MIT
// A Universal Resolver following ENSIP-10, with the functions web3.py 8's ENS module calls:
// findResolver(bytes) and resolve(bytes, bytes) on DNS-encoded names. It walks the registry
// from the name up to the first resolver; a resolver found for a parent name is used only if
// it supports resolve(bytes, bytes) (IExtendedResolver, wildcard resolution). The registry
// address is immutable (part of the runtime code), so the code can be copied to the fixed
// address web3 uses (0xeEeEEEeE14D718C2B47D9923Deab1335E144EeEe) with anvil_setCode.
// Test chain only.
pragma solidity ^0.8.20;

interface IRegistryRead {
    function resolver(bytes32 node) external view returns (address);
}

interface IExtendedResolver {
    function resolve(bytes calldata name, bytes calldata data) external view returns (bytes memory);
}

contract UniversalResolver {
    IRegistryRead public immutable registry;
    bytes4 private constant EXTENDED_RESOLVER = 0x9061b923;

    error ResolverNotFound(bytes name);
    error ResolverNotContract(bytes name, address resolver);
    error ResolverWildcardNotSupported(bytes name, address resolver);
    error ResolverError(bytes errorData);
    error UnsupportedOperation();

    constructor(IRegistryRead registry_) {
        registry = registry_;
    }

    function findResolver(bytes calldata name) public view returns (address, bytes32, uint256) {
        uint256[] memory offsets = new uint256[](name.length + 1);
        uint256 count = 0;
        uint256 i = 0;
        while (i < name.length && uint8(name[i]) != 0) {
            offsets[count++] = i;
            i += uint8(name[i]) + 1;
        }
        require(i < name.length, "UniversalResolver: name is not DNS-encoded");
        bytes32[] memory nodes = new bytes32[](count + 1);
        bytes32 node = bytes32(0);
        nodes[count] = node;
        for (uint256 j = count; j > 0; j--) {
            uint256 start = offsets[j - 1];
            uint256 length = uint8(name[start]);
            node = keccak256(abi.encodePacked(node, keccak256(name[start + 1:start + 1 + length])));
            nodes[j - 1] = node;
        }
        for (uint256 j = 0; j < count; j++) {
            address found = registry.resolver(nodes[j]);
            if (found != address(0)) {
                return (found, nodes[j], offsets[j]);
            }
        }
        return (address(0), bytes32(0), 0);
    }

    function resolve(bytes calldata name, bytes calldata data) external view returns (bytes memory, address) {
        (address resolver, , uint256 offset) = findResolver(name);
        if (resolver == address(0)) {
            revert ResolverNotFound(name);
        }
        if (resolver.code.length == 0) {
            revert ResolverNotContract(name, resolver);
        }
        bool ok;
        bytes memory result;
        if (_supports(resolver, EXTENDED_RESOLVER)) {
            (ok, result) = resolver.staticcall(abi.encodeCall(IExtendedResolver.resolve, (name, data)));
            if (ok) {
                result = abi.decode(result, (bytes));
            }
        } else if (offset != 0) {
            revert ResolverWildcardNotSupported(name, resolver);
        } else {
            (ok, result) = resolver.staticcall(data);
        }
        if (!ok) {
            revert ResolverError(result);
        }
        return (result, resolver);
    }

    function reverse(bytes calldata, uint256) external pure returns (string memory, address, address) {
        revert UnsupportedOperation();
    }

    function supportsInterface(bytes4 interfaceId) external pure returns (bool) {
        return interfaceId == 0x01ffc9a7;
    }

    function _supports(address target, bytes4 interfaceId) private view returns (bool) {
        (bool ok, bytes memory result) = target.staticcall{gas: 30000}(
            abi.encodeWithSelector(0x01ffc9a7, interfaceId));
        return ok && result.length >= 32 && abi.decode(result, (bool));
    }
}
